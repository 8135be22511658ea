package svcmain

import (
	"testing"
	"time"
)

func TestEnvDefaultsAndParsing(t *testing.T) {
	t.Setenv("BH_T_STR", "x")
	t.Setenv("BH_T_EMPTY", "")
	t.Setenv("BH_T_DUR", "3s")
	t.Setenv("BH_T_BAD_DUR", "soon")
	t.Setenv("BH_T_INT", "42")
	t.Setenv("BH_T_BOOL", "false")
	if Env("BH_T_STR", "d") != "x" || Env("BH_T_EMPTY", "d") != "d" || Env("BH_T_UNSET", "d") != "d" {
		t.Error("Env")
	}
	if EnvDuration("BH_T_DUR", time.Second) != 3*time.Second || EnvDuration("BH_T_BAD_DUR", time.Second) != time.Second {
		t.Error("EnvDuration")
	}
	if EnvInt("BH_T_INT", 1) != 42 || EnvInt[int64]("BH_T_STR", 7) != 7 {
		t.Error("EnvInt")
	}
	if EnvBool("BH_T_BOOL", true) != false || EnvBool("BH_T_STR", true) != true {
		t.Error("EnvBool")
	}
	if _, err := KubeConfig("/nonexistent/kubeconfig"); err == nil {
		t.Error("KubeConfig accepted a missing file")
	}
}
