// Package messages is the wire contract of Boilerhouse: every NATS subject
// name, KV bucket name, payload type and the error model that the services
// exchange.
//
// It is a separate Go module that depends only on the standard library, so
// that other systems can import it to publish claim requests without pulling
// in the services or a particular NATS client. Payloads are plain JSON; a
// failed request is answered with the [HeaderError] header set to a [Code]
// and an [Error] as the JSON body.
//
// Tenant ids may contain '.', which NATS treats as a token separator, so any
// tenant id or workload name that becomes part of a subject or a KV key goes
// through [EncodeToken] first (see [ClaimKey], [ActivitySubject] and
// [EventSubject]).
package messages
