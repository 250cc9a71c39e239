# nginx from Debian bookworm's package (1.22), built without a registry: the stand-in for the
# official nginx image (compose: TWIN_NGINX_IMAGE), with wget for the compose healthcheck.
# deploy/nginx.conf uses `server scorer:8000 resolve` (open-source nginx >= 1.27.3: the replicas
# of a later --scale join without a reload). 1.22 lacks that parameter, so the entrypoint serves a
# copy without it: the replicas are resolved once, at start (compose starts lb after every
# scorer is healthy); after a re-scale, `docker compose restart lb`.
ARG BASE=twin-local/debian:bookworm
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx wget \
    && rm -rf /var/lib/apt/lists/* \
    && printf '%s\n' '#!/bin/sh' 'set -e' \
       'sed -E "s/^([[:space:]]*server[[:space:]].*)[[:space:]]resolve([[:space:];])/\1\2/" /etc/nginx/nginx.conf > /tmp/nginx.conf' \
       'exec nginx -c /tmp/nginx.conf -g "daemon off;"' > /usr/local/bin/nginx-entrypoint \
    && chmod 755 /usr/local/bin/nginx-entrypoint
EXPOSE 8080
CMD ["/usr/local/bin/nginx-entrypoint"]
