//go:build linux

package fastvm

import (
	"context"
	"fmt"
	"strings"

	"github.com/vmcp-dev/vmcp/local"
)

// System packages cannot be installed in the emulator's VMs. A VM's system
// directories are the host's, seen through an overlay whose changes are the
// VM's own, but the engine hides every host file that is not readable by
// all (local.hostSecrets: /etc/shadow, keys) behind a read-only mask, and
// dpkg's and apt's lock files (mode 0640) are among them: opening
// /var/lib/dpkg/lock-frontend for writing fails with EACCES, which apt
// reports as "Unable to acquire the dpkg frontend lock ..., are you root?"
// although the VM's user is root. apt's partial-download directories
// (0700) are masked read-only too, and a VM has no network to reach a
// mirror (network.go). Making dpkg work would need the engine to mask
// differently (empty files of the VM's own in place of the host's), which
// is the engine's call; until then, apt-get, apt and dpkg in a fresh VM
// are guards that refuse what would change the packages with the reason
// and what to do instead, and run the real tool for the rest (apt-get -s,
// apt list, dpkg -s, dpkg -l, ...). A build's RUN apt-get install fails
// the build with the same message. Snapshots and built images carry the
// guards.

const (
	guardPath = "/usr/local/lib/fastvm-emulator/package-guard"
	guardDir  = "/usr/local/sbin" // first on the VM's PATH
)

// packageGuard is the script behind the apt-get, apt and dpkg of a VM; it
// is called by their names.
const packageGuard = `#!/bin/sh
# The FastVM emulator's guard for package managers (see the message below).
name=${0##*/}
real=/usr/bin/$name
refuse() {
  cat >&2 <<EOF
E: $name cannot install, upgrade or remove packages in the FastVM emulator's VMs:
their system files are the host's, seen through an overlay that hides the host's
root-only files (dpkg's and apt's lock files among them), and package mirrors are
beyond the VM's network. The host's packages are all there (dpkg -s NAME shows one).
For Python packages use pip in a virtual environment (python3 -m venv /root/venv),
with the emulator started with --fastvm-vm-network-allow pypi.org,files.pythonhosted.org;
for other software, test on FastVM itself.
EOF
  exit "$1"
}
if [ "$name" = dpkg ]; then
  for a in "$@"; do
    case $a in
      --dry-run|--no-act|--simulate) exec "$real" "$@" ;;
    esac
  done
  for a in "$@"; do
    case $a in
      -i|--install|-r|--remove|-P|--purge|--unpack|--configure|-a|--pending|--triggers-only|\
      --set-selections|--clear-selections|--update-avail|--merge-avail|--clear-avail|\
      --forget-old-unavail|--add-architecture|--remove-architecture|-i*|-r*|-P*) refuse 2 ;;
    esac
  done
  exec "$real" "$@"
fi
for a in "$@"; do
  case $a in
    -s|--simulate|--just-print|--dry-run|--recon|--no-act|-h|--help|-v|--version) exec "$real" "$@" ;;
  esac
done
for a in "$@"; do
  case $a in
    install|reinstall|remove|purge|upgrade|dist-upgrade|full-upgrade|autoremove|autopurge|\
    update|build-dep|dselect-upgrade|satisfy|clean|autoclean|auto-clean|edit-sources) refuse 100 ;;
  esac
done
exec "$real" "$@"
`

// installPackageGuards puts the guards in a fresh VM, for the package
// managers the host has.
func installPackageGuards(ctx context.Context, m *local.Machine) error {
	if _, err := m.WriteFile(ctx, guardPath, strings.NewReader(packageGuard), 0o755); err != nil {
		return fmt.Errorf("install the emulator's package-manager guard: %w", err)
	}
	link := `for n in apt-get apt dpkg; do if [ -x /usr/bin/$n ]; then ln -sf "$1" "$2/$n" || exit; fi; done`
	return runChecked(ctx, m, local.Command{Argv: []string{"/bin/sh", "-c", link, "sh", guardPath, guardDir}})
}
