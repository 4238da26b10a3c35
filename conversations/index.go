package conversations

import (
	"slices"
	"strconv"
	"strings"
)

// Both stores keep an index beside the conversations, so that finding the
// owner of a machine or a snapshot, or a principal's conversations, reads a
// few keys instead of every conversation (on Redis, All is a scan and a read
// of every record). The index files a conversation's handle under keys it
// derives from the record alone (indexKeys): each machine of the
// conversation (by backend and id, its earlier ids too, as
// Conversation.Machine finds them), each snapshot (by id, as
// Conversation.Snapshot finds them) and its principal, every key naming the
// principal as well. A store changes a record's index entries in the same
// transaction as the record, by the difference between the record it
// replaces and the new one.
//
// A lookup still checks the record it reaches: that it is the principal's
// and holds the id. An index entry that is stale or forged (an operator's
// hand, a replica of an older version) thus yields "not found", never
// another principal's conversation.

// indexVersion is the layout of the index. A store whose recorded version
// differs (or that has none: a version before the index wrote it) is
// indexed again when opened. Redis cannot drop an old layout's keys
// cheaply: a new layout must use other key names.
const indexVersion = "1"

// indexKeys returns the keys the index files c under, sorted and without
// duplicates.
func indexKeys(c *Conversation) []string {
	keys := []string{principalIndexKey(c.Principal)}
	for _, m := range c.Machines {
		keys = append(keys, machineIndexKey(c.Principal, m.Backend, m.ID))
		for _, id := range m.Previous {
			keys = append(keys, machineIndexKey(c.Principal, m.Backend, id))
		}
	}
	for _, s := range c.Snapshots {
		keys = append(keys, snapshotIndexKey(c.Principal, s.ID))
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// indexDiff returns the keys of old that new lacks (entries to remove) and
// those of new that old lacks (entries to add). Both must be sorted.
func indexDiff(old, new []string) (removed, added []string) {
	i, j := 0, 0
	for i < len(old) || j < len(new) {
		switch {
		case j == len(new) || i < len(old) && old[i] < new[j]:
			removed = append(removed, old[i])
			i++
		case i == len(old) || new[j] < old[i]:
			added = append(added, new[j])
			j++
		default:
			i++
			j++
		}
	}
	return removed, added
}

// keysOf returns the index keys of c, none for nil (no record).
func keysOf(c *Conversation) []string {
	if c == nil {
		return nil
	}
	return indexKeys(c)
}

func machineIndexKey(principal, backend, id string) string {
	return "machine:" + joinKey(principal, backend, id)
}

func snapshotIndexKey(principal, id string) string {
	return "snapshot:" + joinKey(principal, id)
}

func principalIndexKey(principal string) string { return "principal:" + joinKey(principal) }

// joinKey joins parts, each preceded by its length, so that no part (a
// principal is whatever the identity provider says; an id whatever a
// backend returned) can make one key read as another, and so that a key is
// a prefix of another only if its parts are the other's first parts.
func joinKey(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(strconv.Itoa(len(p)))
		b.WriteByte(':')
		b.WriteString(p)
	}
	return b.String()
}

// holdsMachine returns a check that a conversation is the principal's and
// holds the machine.
func holdsMachine(principal, backend, id string) func(*Conversation) bool {
	return func(c *Conversation) bool { return c.Principal == principal && c.Machine(backend, id) != nil }
}

// holdsSnapshot returns a check that a conversation is the principal's and
// holds the snapshot.
func holdsSnapshot(principal, id string) func(*Conversation) bool {
	return func(c *Conversation) bool { return c.Principal == principal && c.Snapshot(id) != nil }
}

// ownedBy returns a check that a conversation is the principal's.
func ownedBy(principal string) func(*Conversation) bool {
	return func(c *Conversation) bool { return c.Principal == principal }
}
