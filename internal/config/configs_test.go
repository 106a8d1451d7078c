package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"go.yaml.in/yaml/v3"
)

// exampleEnv is the environment the example configurations reference.
var exampleEnv = map[string]string{
	"PG_DSN":         "postgres://sluice:pw@localhost:5432/sluice",
	"KAFKA_PASSWORD": "kafka-pw",
}

func TestExampleConfigs(t *testing.T) {
	files, err := filepath.Glob("../../configs/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("found %d example configs, want at least 4", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := LoadWith(f, envMap(exampleEnv))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestReferenceConfigHasEveryKey keeps configs/sluice.yaml the full reference:
// a key added to Config must be added there too.
func TestReferenceConfigHasEveryKey(t *testing.T) {
	data, err := os.ReadFile("../../configs/sluice.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	present := map[string]bool{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := join(path, n.Content[i].Value)
			present[p] = true
			walk(n.Content[i+1], p)
		}
	}
	walk(doc.Content[0], "")
	for _, p := range keyPaths(reflect.TypeFor[Config](), "") {
		if !present[p] {
			t.Errorf("configs/sluice.yaml lacks %s", p)
		}
	}
}
