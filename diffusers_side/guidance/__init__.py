"""What steers a guided sample: guides (`base.Guide`; the classifier on x_t, the classifier on x0_hat, the exemplar
posterior), the guidance window (`schedule`), target samplers (`targets`), and the registry of guides by name."""
