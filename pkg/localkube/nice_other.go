//go:build !linux

package localkube

import (
	"errors"
	"syscall"
)

// renice is a no-op where threads cannot be listed through /proc.
func renice(string, int) error { return nil }

func signalAPIServer(string, syscall.Signal) error {
	return errors.New("localkube: pausing the API server needs Linux")
}
