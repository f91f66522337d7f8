# pyproxy: the reverse proxy that pydeploy runs on every host, as Kamal runs kamal-proxy.
#
#   docker build -t pyproxy .
#   docker run -d --name pyproxy -p 80:80 -p 443:443 -v pyproxy-config:/home/pyproxy/.config/pyproxy pyproxy
#   docker exec pyproxy pyproxy deploy web --target web-1:80
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

COPY . /tmp/pyproxy/
RUN pip install -q --no-deps /tmp/pyproxy && rm -rf /tmp/pyproxy

# Let the non-root user bind 80/443 also where Docker's default net.ipv4.ip_unprivileged_port_start=0 does
# not apply (--network host): CAP_NET_BIND_SERVICE on the interpreter, which is what
# `setcap cap_net_bind_service=+ep` writes, done here without libcap's tools (no apt needed).
# Running with --cap-drop ALL then needs --cap-add NET_BIND_SERVICE.
RUN python3 -c 'import os, struct, sys; os.setxattr(os.path.realpath(sys.executable), "security.capability", \
struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0))'

# State ($XDG_CONFIG_HOME/pyproxy/pyproxy.state) and the ACME certificate cache (.../pyproxy/certs) live in a
# volume, so a new container keeps the routes and certificates. `docker exec` runs as the same user with the
# same environment, so `pyproxy deploy|list|remove` find the admin socket.
RUN useradd --create-home --uid 1000 pyproxy \
 && mkdir -p /home/pyproxy/.config/pyproxy \
 && chown -R pyproxy:pyproxy /home/pyproxy/.config
USER pyproxy
WORKDIR /home/pyproxy
ENV XDG_CONFIG_HOME=/home/pyproxy/.config \
    PYPROXY_SOCKET=/tmp/pyproxy.sock
VOLUME /home/pyproxy/.config/pyproxy

EXPOSE 80 443
# Healthy = the admin API answers (it runs in the same event loop as the proxy).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["pyproxy", "list"]
ENTRYPOINT ["pyproxy"]
CMD ["run"]
