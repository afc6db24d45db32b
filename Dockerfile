# syntax=docker/dockerfile:1
#
# Build:  docker build -t portcullis .
# Run:    docker run --rm -p 8080:8080 portcullis                       (the example config)
#         docker run --rm -p 8080:8080 -v "$PWD/my.yaml:/etc/portcullis/gateway.yaml:ro" portcullis
# Listeners inside a container must bind 0.0.0.0 (the image's copy of the example does).

# ---- build -------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: source edits do not rebuild aws-lc and hyper.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for b in auth_stages revocation; do echo 'fn main() {}' > "benches/$b.rs"; done \
 && cargo build --release --locked --bin portcullis \
 && rm -rf src benches target/release/.fingerprint/portcullis-*

COPY src ./src
COPY benches ./benches
COPY gateway.yaml ./
COPY examples/keys/demo-ed25519.pub.pem ./examples/keys/
COPY examples/users.yaml ./examples/
RUN cargo build --release --locked --bin portcullis \
 && strip target/release/portcullis \
 && sed -e 's/bind: 127.0.0.1:8080/bind: 0.0.0.0:8080/' \
        -e 's/bind: 127.0.0.1:9090/bind: 0.0.0.0:9090/' \
        -e 's#file: audit.jsonl#file: /tmp/audit.jsonl#' gateway.yaml > gateway.container.yaml \
 && ./target/release/portcullis check --config gateway.container.yaml

# ---- runtime -----------------------------------------------------------------------------
# distroless/cc: glibc, CA certificates (for https:// upstreams), no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
COPY --from=build --chown=root:root /src/gateway.container.yaml /etc/portcullis/gateway.yaml
COPY --chown=root:root examples/keys/demo-ed25519.pub.pem /etc/portcullis/examples/keys/demo-ed25519.pub.pem
# DEMO users with published passwords, for the example only: mount your own users file.
COPY --chown=root:root examples/users.yaml /etc/portcullis/examples/users.yaml
# uid 65532 ("nonroot"); config and keys are root-owned and read-only to it.
USER nonroot:nonroot
# 8080 proxy, 9090 admin (health, readiness, metrics; the example sets no admin token, so the
# admin API is off).
EXPOSE 8080 8443 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "--config", "/etc/portcullis/gateway.yaml", "--log-format", "json"]
