package devstack

import "syscall"

// childAttrs: the child dies with the dev stack, even when the dev stack is killed.
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
