# pyproxy's image: a drop-in for basecamp/kamal-proxy, so that Kamal boots it as its proxy unchanged, and the
# proxy every pydeploy host runs. The program answers to `kamal-proxy` (the name Kamal calls) and `pyproxy`.
#
#   docker build -t registry.example.com/pyproxy:v0.10.0 .        # tag v<version>: Kamal wants >= v0.9.2
#   docker run -d --name kamal-proxy -p 80:80 -p 443:443 \
#     -v kamal-proxy-config:/home/kamal-proxy/.config/kamal-proxy registry.example.com/pyproxy:v0.10.0
#   docker exec kamal-proxy kamal-proxy deploy web --target web-1:80
#
# As in kamal-proxy's own image: no ENTRYPOINT, CMD `kamal-proxy run` (Kamal's legacy boot runs the image with
# no command, its proxy.run boot with `kamal-proxy run [--debug] [--metrics-port N]`), user kamal-proxy, state
# and ACME certificates in ~/.config/kamal-proxy (Kamal's volume kamal-proxy-config), the admin socket at
# /tmp/kamal-proxy.sock, where `docker exec kamal-proxy kamal-proxy ...` finds it with no environment.
# Kamal bind-mounts its uploads (error pages, certificates) on ~/.apps-config; they arrive world-readable
# (see README, "Kamal: pyproxy as Kamal's proxy").
#
# The test bed, which cannot reach Docker Hub, builds it with --build-arg BASE_IMAGE=pydeploy-python:3.11.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PATH=/opt/pyproxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The runtime dependencies (read from pyproject.toml) get a layer of their own, so that a change to the code
# reinstalls only pyproxy itself.
COPY pyproject.toml /tmp/pyproxy/
RUN python3 -m venv /opt/pyproxy \
 && python3 -c 'import tomllib; \
print("\n".join(tomllib.load(open("/tmp/pyproxy/pyproject.toml", "rb"))["project"]["dependencies"]))' \
    >/tmp/requirements.txt \
 && pip install -q -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Let the non-root user bind 80/443 also where Docker's default net.ipv4.ip_unprivileged_port_start=0 does
# not apply (--network host): CAP_NET_BIND_SERVICE on the interpreter, which is what
# `setcap cap_net_bind_service=+ep` writes, done here without libcap's tools (no apt needed).
# Running with --cap-drop ALL then needs --cap-add NET_BIND_SERVICE.
RUN python3 -c 'import os, struct, sys; os.setxattr(os.path.realpath(sys.executable), "security.capability", \
struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0))'

# The user, and the directories Kamal mounts: a fresh named volume takes the ownership of the directory it
# is mounted on, so ~/.config/kamal-proxy must exist here, owned by the user, for the state file to be
# writable. (No VOLUME: Kamal and pydeploy always mount a named one, and an anonymous one per container
# would be left behind by every `docker container prune`.)
RUN useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin kamal-proxy \
 && mkdir -p /home/kamal-proxy/.config/kamal-proxy /home/kamal-proxy/.apps-config \
 && chown -R kamal-proxy:kamal-proxy /home/kamal-proxy

COPY . /tmp/pyproxy/
RUN pip install -q --no-deps /tmp/pyproxy && rm -rf /tmp/pyproxy

USER kamal-proxy:kamal-proxy
WORKDIR /home/kamal-proxy
EXPOSE 80 443
# Healthy = the admin API answers (it runs in the same event loop as the proxy).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["kamal-proxy", "list"]
CMD ["kamal-proxy", "run"]

# Kamal's `proxy reboot|remove|upgrade` find the container and the image by the title label only
# (`docker container prune --filter label=org.opencontainers.image.title=kamal-proxy`). VERSION is pyproject's
# version (the test bed passes it; tests/test_kamal_image.py checks this default matches).
ARG VERSION=0.10.0
LABEL org.opencontainers.image.title=kamal-proxy \
      org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.description="pyproxy, a Python kamal-proxy"
