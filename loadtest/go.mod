module boilerhouse.dev/loadtest

go 1.26.0

require (
	boilerhouse.dev/messages v0.0.0
	boilerhouse.dev/pkg v0.0.0
	github.com/nats-io/nats.go v1.55.0
	golang.org/x/exp v0.0.0-20260908205506-85c1c2202aba
)

require (
	github.com/antithesishq/antithesis-sdk-go v0.8.0-default-no-op // indirect
	github.com/go-kit/kit v0.13.0 // indirect
	github.com/go-kit/log v0.2.0 // indirect
	github.com/go-logfmt/logfmt v0.5.1 // indirect
	github.com/google/go-tpm v0.9.8 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/minio/highwayhash v1.0.4 // indirect
	github.com/nats-io/jwt/v2 v2.8.2 // indirect
	github.com/nats-io/nats-server/v2 v2.15.2 // indirect
	github.com/nats-io/nkeys v0.4.16 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)

replace (
	boilerhouse.dev/messages => ../messages
	boilerhouse.dev/pkg => ../pkg
)
