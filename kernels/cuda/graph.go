package cuda

import (
	"errors"

	"github.com/gemmoe/gemmoe/cuda"
	"github.com/gemmoe/gemmoe/kernels"
)

// BeginCapture starts recording the ops enqueued from now on into a CUDA
// graph instead of running them; EndCapture returns the graph. Use it to
// record one decode step and replay it per token, which removes the launch
// overhead of hundreds of small kernels.
//
// A graph replays the exact kernels and device addresses it recorded, so:
//   - inputs that change per step (token id, position) must live in tensors
//     allocated before the capture and be written with Upload before each
//     Graph.Launch;
//   - Upload, Download, Sync and WrapHost fail during a capture;
//   - shapes are fixed (a step with another number of tokens, or a cache
//     that grew past what the attention grid covers, needs another graph:
//     attention grids are sized from the cache capacity, so one graph covers
//     every position of a cache);
//   - tensors freed during the capture stay reserved for the graph until
//     Graph.Close.
func (b *Backend) BeginCapture() error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	if b.capturing {
		return errors.New("cuda: BeginCapture while already capturing")
	}
	if b.sideOpen {
		return errors.New("cuda: BeginCapture between Side and Join")
	}
	if err := b.stream.BeginCapture(); err != nil {
		return err
	}
	b.capturing = true
	b.held = nil
	return nil
}

// EndCapture ends the capture and instantiates the recorded graph (a *Graph).
func (b *Backend) EndCapture() (kernels.Graph, error) {
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.leave()
	if !b.capturing {
		return nil, errors.New("cuda: EndCapture without BeginCapture")
	}
	if b.sideOpen {
		return nil, errors.New("cuda: EndCapture between Side and Join")
	}
	b.capturing = false
	held := b.held
	b.held = nil
	g, err := b.stream.EndCapture()
	if err != nil {
		for _, p := range held {
			b.pool.Free(p)
		}
		return nil, err
	}
	defer g.Destroy()
	exec, err := g.Instantiate()
	if err != nil {
		for _, p := range held {
			b.pool.Free(p)
		}
		return nil, err
	}
	return &Graph{b: b, exec: exec, held: held}, nil
}

// Graph is a recorded sequence of ops, replayable on the backend's stream.
type Graph struct {
	b    *Backend
	exec *cuda.GraphExec
	held []cuda.DevicePtr
}

// Launch enqueues one replay of the graph.
func (g *Graph) Launch() error {
	if g.exec == nil {
		return errors.New("cuda: Launch of a closed graph")
	}
	if err := g.b.enter(); err != nil {
		return err
	}
	defer g.b.leave()
	return g.exec.Launch(g.b.stream)
}

// Close waits for pending replays and frees the graph and the memory it kept.
func (g *Graph) Close() error {
	if g.exec == nil {
		return nil
	}
	if err := g.b.enter(); err != nil {
		return err
	}
	defer g.b.leave()
	err := errors.Join(g.b.stream.Sync(), g.exec.Destroy())
	g.exec = nil
	for _, p := range g.held {
		g.b.pool.Free(p)
	}
	g.held = nil
	return err
}

var _ kernels.Capturer = (*Backend)(nil)
