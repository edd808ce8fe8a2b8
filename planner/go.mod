module github.com/fleetshift/fleetshift/planner

go 1.26.0

require (
	github.com/Masterminds/semver/v3 v3.5.0
	github.com/fleetshift/fleetshift/shared v0.0.0
	github.com/fleetshift/fleetshift/streams v0.0.0
	github.com/google/uuid v1.6.0
	github.com/jackc/pgx/v5 v5.12.0
	github.com/nats-io/nats.go v1.55.0
	github.com/rs/zerolog v1.35.1
)

require (
	github.com/andybalholm/brotli v1.1.0 // indirect
	github.com/distribution/reference v0.6.0 // indirect
	github.com/fleetshift/fleetshift/migrations v0.0.0 // indirect
	github.com/gofiber/fiber/v2 v2.52.15 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/mattn/go-runewidth v0.0.16 // indirect
	github.com/nats-io/nkeys v0.4.16 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/rivo/uniseg v0.2.0 // indirect
	github.com/valyala/bytebufferpool v1.0.0 // indirect
	github.com/valyala/fasthttp v1.51.0 // indirect
	github.com/valyala/tcplisten v1.0.0 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/sync v0.24.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
)

replace github.com/fleetshift/fleetshift/shared => ../shared

replace github.com/fleetshift/fleetshift/streams => ../streams

replace github.com/fleetshift/fleetshift/migrations => ../migrations
