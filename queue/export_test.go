package queue

// BareIndexState is, for tests, how far the bare index of lane has read (every bare message
// below next was read once) and how many bare messages it remembers as maybe pending.
func BareIndexState(c *OrderCheck, l Lane) (next uint64, remembered int) {
	ix := c.bare[l]
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return ix.next, len(ix.seqs)
}
