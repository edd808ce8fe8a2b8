module github.com/fleetshift/fleetshift/ingest

go 1.26.0
