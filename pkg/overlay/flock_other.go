//go:build !unix

package overlay

import "os"

// Without flock only the in-process lock and the no-overwrite commit guard a directory.
func tryFlock(*os.File) (bool, error) { return true, nil }

func sameFile(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	if err != nil {
		return false
	}
	return os.SameFile(a, b)
}
