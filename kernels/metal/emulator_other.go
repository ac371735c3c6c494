//go:build !unix

package metal

import (
	"fmt"
	"runtime"
)

func startEmulator(bin string) (Executor, error) {
	return nil, fmt.Errorf("metal-emulated: the emulator runs on unix systems only, not %s", runtime.GOOS)
}
