module boilerhouse.dev/services

go 1.26.0
