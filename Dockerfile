# The demo as a long-running metrics source for docker-compose.yml: three cache nodes on the
# stack's Redis, /metrics on METRICS_ADDR, a paced workload for DEMO_HOLD_SECS.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --example demo

FROM debian:bookworm-slim
COPY --from=build /src/target/release/examples/demo /usr/local/bin/tiered-cache-demo
ENV METRICS_ADDR=0.0.0.0:9898 \
    DEMO_HOLD_SECS=3600
EXPOSE 9898
ENTRYPOINT ["/usr/local/bin/tiered-cache-demo"]
