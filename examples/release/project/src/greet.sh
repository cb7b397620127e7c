#!/bin/sh
# greet NAME: the whole product.
name="${1:-world}"
echo "Hello, ${name}!"
