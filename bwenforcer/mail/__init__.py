"""Cap notices as e-mail and the transports that send them."""
