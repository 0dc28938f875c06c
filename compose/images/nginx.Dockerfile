# nginx FROM scratch, from the host's Debian package (nginx-light or nginx): the binary and the
# shared libraries it links, put together by compose/build-images.sh, with the nginx.conf
# beside this file. Sites go in /etc/nginx/conf.d/*.conf, as in the nginx:alpine image.
# Runs as the unprivileged user nginx (101): listen on ports above 1023.
FROM scratch
COPY base/ /
COPY --chown=101:101 cache/ /var/cache/nginx/
ENV PATH=/usr/sbin
USER 101:101
EXPOSE 8080
STOPSIGNAL SIGQUIT
# -e stderr: the compiled-in error log path is opened before nginx.conf is read.
ENTRYPOINT ["nginx", "-e", "stderr"]
CMD ["-g", "daemon off;"]
