// Package overlay holds what the overlay-store, the translator and the dev node agree on about
// a Pod's overlay directories, and the archive codec that moves them in and out safely.
package overlay

// A Pod of a workload with overlay directories carries a helper container that mounts every
// overlay volume under MountRoot (volume i at MountRoot/<i>) and a control volume at
// ControlDir. The overlay-store execs plain `tar` in it: the workload image needs none.
const (
	// HelperContainer runs for the Pod's life (`sleep`); extract and pool+data restore exec here.
	HelperContainer = "overlay"
	// RestoreInitContainer holds a cold+data Pod's workload back until RestoredMarker exists;
	// the overlay-store restores through it, then creates the marker.
	RestoreInitContainer = "overlay-restore"
	// MountRoot is where the helper and init containers see the overlay volumes.
	MountRoot = "/overlay"
	// ControlVolume is the emptyDir shared by the helper and init containers.
	ControlVolume = "bh-control"
	// ControlDir is where ControlVolume is mounted.
	ControlDir = "/bh"
	// RestoredMarker tells the restore init container that the restore is done.
	RestoredMarker = ControlDir + "/restored"
	// DefaultHelperImage provides sh, tar and sleep (busybox).
	DefaultHelperImage = "busybox:1.36"
)

// VolumePrefix names the Pod's overlay volumes: overlay dir i is the emptyDir VolumePrefix+i,
// mounted at the dir in the workload's container and at MountRoot/<i> in the helper.
const VolumePrefix = "overlay-"

// Commands the overlay-store execs in the helper (or restore init) container; plain tar, as
// in busybox.
var (
	// ExtractCommand writes every overlay volume as a tar stream on stdout ("./<i>/...").
	ExtractCommand = []string{"tar", "-c", "-f", "-", "-C", MountRoot, "."}
	// RestoreCommand extracts the clean stream of Unpack (entries "<i>/...") from stdin.
	RestoreCommand = []string{"tar", "-x", "-f", "-", "-C", MountRoot}
	// MarkRestoredCommand creates RestoredMarker, releasing the restore init container.
	MarkRestoredCommand = []string{"touch", RestoredMarker}
)
