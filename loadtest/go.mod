module boilerhouse.dev/loadtest

go 1.26.0
