# PostgreSQL FROM scratch, from the host's Debian package (postgresql-15 on Debian 12): the
# programs of /usr/lib/postgresql/N/bin (linked from /usr/local/bin), their modules
# (/usr/lib/postgresql/N/lib, JIT left out), /usr/share/postgresql/N, the time zone data and the
# shared libraries they link, put together by compose/build-images.sh, plus dash for
# postgres-entrypoint.sh (initdb at the first start) — the one image of the fleet with a shell.
# Runs as the unprivileged user postgres (999); the data directory is the volume
# /var/lib/postgresql/data (0700, the postgres user's). Same variables as the public postgres
# image: POSTGRES_PASSWORD (required at the first start), POSTGRES_USER, POSTGRES_DB, PGDATA.
FROM scratch
COPY base/ /
COPY --chown=999:999 data/ /var/lib/postgresql/
COPY --chown=999:999 run/ /var/run/postgresql/
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/local/bin:/bin \
    PGDATA=/var/lib/postgresql/data \
    TZ=Etc/UTC
USER 999:999
WORKDIR /var/lib/postgresql
EXPOSE 5432
# Fast shutdown: open transactions are rolled back, the data is flushed, the server exits.
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint.sh"]
