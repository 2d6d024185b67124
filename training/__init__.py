"""LoRA training: data, config and the recipe that produces servable adapters."""
