# The outpost image FROM scratch, from local material only (no registry): the context is put
# together by compose/build-images.sh, which documents what goes in. Same user, paths, ports
# and entrypoint as compose/Dockerfile's runtime image, so compose/docker-compose.yml runs
# either. No shell and no other program: health checks use `outpost probe`.
FROM scratch
# The dynamic loader and the shared libraries the binary links (from ldd), the CA bundle,
# /etc/passwd and /etc/group with the runtime user, /etc/nsswitch.conf, /tmp (1777).
COPY base/ /
# State directories, owned by the runtime user, 0700: the control plane's data, the config
# backup, the telemetry spool and the tokens. A named volume mounted on one of them starts as a
# copy of it, owner and mode included.
COPY --chown=10001:10001 state/ /var/lib/outpost/
# Commented example settings; use them with `--config /etc/outpost/gateway.toml`.
COPY config/ /etc/outpost/
# The binary last: a new build replaces only this layer.
COPY outpost /usr/local/bin/outpost
ENV PATH=/usr/local/bin
USER 10001:10001
WORKDIR /var/lib/outpost
EXPOSE 8080 8443 8090 7070 7071
# Liveness of a gateway (ops port); compose/docker-compose.yml sets each role's own check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["outpost", "probe", "http://127.0.0.1:8090/healthz"]
ENTRYPOINT ["outpost"]
CMD ["--help"]
