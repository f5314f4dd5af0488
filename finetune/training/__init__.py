"""The LightningModule, losses, freezing callbacks, optimizer parameter groups, schedules."""
