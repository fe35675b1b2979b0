package kit

import "runtime"

// LiveHeap is the heap still in use after two collections (the second
// frees what the first only finalized): what a structure under
// measurement keeps, without the garbage its building left behind.
func LiveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
