module boilerhouse.dev/services

go 1.26.0

require (
	boilerhouse.dev/tools v0.0.0
	github.com/go-kit/kit v0.13.0
	github.com/go-logr/logr v1.4.3
	k8s.io/api v0.37.2
	k8s.io/apimachinery v0.37.2
	k8s.io/client-go v0.37.2
	sigs.k8s.io/controller-runtime v0.25.2
	boilerhouse.dev/messages v0.0.0
	boilerhouse.dev/pkg v0.0.0
	github.com/nats-io/nats-server/v2 v2.15.2
	github.com/nats-io/nats.go v1.55.0
	github.com/oklog/run v1.2.0
)

replace boilerhouse.dev/messages => ../messages

replace boilerhouse.dev/pkg => ../pkg

replace boilerhouse.dev/tools => ../tools
