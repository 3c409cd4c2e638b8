"""The KL-regularised optimum of the frontier plot (optimum.py), beside the lesson."""
