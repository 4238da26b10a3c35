package local

import (
	"os"
	"strings"
)

// Container names the container engine this process runs under ("docker",
// "podman", "kubernetes", or what the container variable says), or "" when
// it runs on a host of its own.
func Container() string {
	exists := func(p string) bool {
		_, err := os.Stat(p)
		return err == nil
	}
	cgroup, _ := os.ReadFile("/proc/1/cgroup")
	switch {
	case exists("/.dockerenv"):
		return "docker"
	case exists("/run/.containerenv"):
		return "podman"
	case os.Getenv("container") != "":
		return os.Getenv("container")
	case strings.Contains(string(cgroup), "kubepods"):
		return "kubernetes"
	}
	return ""
}
