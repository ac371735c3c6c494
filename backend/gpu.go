package backend

import (
	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/kernels/cuda"
	"github.com/gemmoe/gemmoe/kernels/metal"
)

func init() {
	register("cuda", func() (kernels.Backend, error) { return cuda.New() }, true)
	register("metal", func() (kernels.Backend, error) { return metal.New() }, true)
	register("metal-emulated", func() (kernels.Backend, error) { return metal.NewEmulated() }, false)
}
