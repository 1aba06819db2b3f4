"""The original feature visualizer: `data_fns.get_feature_data` over saekit's dashboards."""
