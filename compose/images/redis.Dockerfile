# Redis FROM scratch, from the host's Debian packages (redis-server, redis-tools): the binaries
# and the shared libraries they link, put together by compose/build-images.sh. Runs as the
# unprivileged user redis (999); compose/docker-compose.yml sets the command line.
FROM scratch
COPY base/ /
COPY --chown=999:999 data/ /data/
ENV PATH=/usr/bin
USER 999:999
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
