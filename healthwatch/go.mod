module github.com/fleetshift/fleetshift/healthwatch

go 1.26.0
