# fleetshift: one image for the server (every role) and the device agent.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build make build

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/bin/ /usr/local/bin/
ENV FLEETSHIFT_DATA_DIR=/var/lib/fleetshift FLEETSHIFT_LOG_FORMAT=json
VOLUME /var/lib/fleetshift
EXPOSE 3001
ENTRYPOINT ["fleetshift"]
CMD ["serve"]
