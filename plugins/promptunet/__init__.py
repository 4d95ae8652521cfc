"""promptunet: unet trained with simulated prompts (boxes, clicks, previous masks)."""
