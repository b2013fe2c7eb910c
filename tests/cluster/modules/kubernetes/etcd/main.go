// etcd, the server binary: what go.etcd.io/etcd/v3's main.go does, at the etcd version the
// Kubernetes release in ../go.mod requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
