# Redis 7 from Debian bookworm's redis-server package, built without a registry: the stand-in for
# the official redis:7 image (compose: TWIN_REDIS_IMAGE). Like the official image it serves from
# /data as the redis user and turns protected mode off (other containers connect without a
# password; Debian's default would refuse every non-loopback client).
ARG BASE=twin-local/debian:bookworm
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data \
    && printf '%s\n' '#!/bin/sh' \
       'if [ "$1" = redis-server ]; then shift; exec redis-server --protected-mode no "$@"; fi' \
       'exec "$@"' > /usr/local/bin/redis-entrypoint \
    && chmod 755 /usr/local/bin/redis-entrypoint
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]
CMD ["redis-server"]
