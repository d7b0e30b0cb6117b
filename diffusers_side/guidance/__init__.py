"""What steers a guided sample: guides (classifier, exemplar posterior) and target samplers."""
