module boilerhouse.dev/messages

go 1.26.0
