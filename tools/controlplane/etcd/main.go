// Command etcd is etcd's own server main, built from the Go module proxy so that
// tests and the dev stack need no downloaded release binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
