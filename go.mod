module github.com/gemmoe/gemmoe

go 1.26.0

require (
	github.com/ebitengine/purego v0.11.3
	github.com/nlpodyssey/safetensors v0.0.0-20250209183917-bfb01cc25f7c
	github.com/x448/float16 v0.8.4
	golang.org/x/sys v0.50.0
)
