"""The channels replies go out on: the WhatsApp senders."""
