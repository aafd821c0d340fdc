package store

import "github.com/kvd-project/kvd"

// placement is what a map says of where keys live: the group of every
// slot, and the groups there are.
type placement struct {
	slot   [kvd.SlotCount]kvd.GroupID
	groups map[kvd.GroupID]bool
}

// placementOf returns what m says of where keys live (nil for no map).
func placementOf(m *kvd.Map) *placement {
	if m == nil {
		return nil
	}
	p := &placement{groups: make(map[kvd.GroupID]bool, len(m.Groups))}
	for _, g := range m.Groups {
		p.groups[g.ID] = true
		for _, r := range g.Slots {
			for s := max(r[0], 0); s <= r[1] && s < kvd.SlotCount; s++ {
				p.slot[s] = g.ID
			}
		}
	}
	return p
}
