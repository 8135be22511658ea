//go:build !linux

package devstack

import "syscall"

func childAttrs() *syscall.SysProcAttr { return nil }
