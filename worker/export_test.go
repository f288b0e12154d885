package worker

import "context"

// StartForFloor readies p for LaneFloor without running it.
func (p *Pool) StartForFloor() error {
	if err := p.init(); err != nil {
		return err
	}
	p.hard = context.Background()
	return nil
}

// LaneFloor is laneFloor of the live lane.
func (p *Pool) LaneFloor(ctx context.Context, seq uint64) (uint64, error) {
	return p.laneFloor(ctx, p.lanes[0], seq)
}
