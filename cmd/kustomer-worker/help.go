package main

import (
	"github.com/alecthomas/kong"
)

// helpCmd prints the usage of the program or of one command, like --help.
type helpCmd struct {
	Command []string `arg:"" optional:"" name:"command" help:"The command, such as run or dlq replay."`
}

func (c *helpCmd) Help() string {
	return `Examples:
  kustomer-worker help
  kustomer-worker help run
  kustomer-worker help dlq replay`
}

func (c *helpCmd) Run(kctx *kong.Context) error {
	target, err := kong.Trace(kctx.Kong, c.Command)
	if err != nil {
		return usagef("help: %v", err)
	}
	if target.Error != nil {
		return usagef("help: %v", target.Error)
	}
	return target.PrintUsage(false)
}
