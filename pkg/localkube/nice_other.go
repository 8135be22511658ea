//go:build !linux

package localkube

// renice is a no-op where threads cannot be listed through /proc.
func renice(string, int) error { return nil }
