"""Model sources other than timm: each adapter presents its models the way the capture reads a timm ViT."""
