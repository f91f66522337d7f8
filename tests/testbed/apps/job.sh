#!/bin/sh
# A job worker (a role with `cmd: /job.sh`): works until SIGTERM, then finishes the job in progress, which
# takes JOB_FINISH_SECONDS (default 2), and exits 0. Killed before that, it exits 137: a job was lost.
trap 'sleep "${JOB_FINISH_SECONDS:-2}"; echo "job finished" >>/tmp/job.log; exit 0' TERM
echo "working" >>/tmp/job.log
while :; do sleep 1 & wait $!; done
