"""Action files the tests share."""

from __future__ import annotations

NODE_ACTION = """\
name: Hello
description: says hello
inputs:
  who:
    description: whom to greet
    default: world
outputs:
  greeting:
    description: what was said
runs:
  using: node20
  main: dist/index.js
"""
